"""Data as the soup sees it: the shard format (shards.py), embedders (embed.py), text and tokens
(text.py), evaluation windows (windows.py), π and mix(h) (mixture.py), the LightningDataModule
(datamodule.py). Imports soe.core only."""

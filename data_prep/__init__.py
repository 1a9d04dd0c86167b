"""Data preparation: raw multi-domain text -> tokenizer -> domains -> token shards (see README.md)."""

"""Turn raw dataset downloads into WebDataset tar shards with a manifest."""

"""Training a discovered cell from scratch: the DARTS evaluation network and protocol."""

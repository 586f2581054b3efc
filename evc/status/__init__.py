"""`evc status`: the network's public state, read-only, from any machine."""

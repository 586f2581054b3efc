"""`evc demo`: the whole network on one machine, in one command."""

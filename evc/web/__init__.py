"""`evc web`: the network in a browser (docs/WEB.md)."""

"""Wire formats shared by every component: TCP framing and typed messages."""

"""EV_CP_M: the health monitor of one charge point."""

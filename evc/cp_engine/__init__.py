"""EV_CP_E: the engine that supplies energy."""

"""EV_Central: the brain of the charging network."""

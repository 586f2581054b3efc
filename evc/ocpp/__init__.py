"""The OCPP 1.6J gateway: real chargers as evc charge points (docs/OCPP.md)."""

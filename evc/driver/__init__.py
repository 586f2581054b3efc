"""EV_Driver: a driver asking central for charges over Kafka."""

"""`evc broker`: a real single-node Apache Kafka 4.x (KRaft) without Docker."""

"""Engine adapters and entry points of streamscore: the PyFlink job, the Beam pipelines,
the CLI, the event generator and the local Kafka broker."""

"""Engine-free logic of streamscore: feature spec and compilers, reference aggregation,
Avro codecs, model registry and ONNX scoring. Nothing here imports Flink or Beam."""

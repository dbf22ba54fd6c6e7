import json

from jobs.generator import TrafficConfig, generate_events
from models.train import dataset_from_rows, labelled_dataset, registry_is_current
from transforms.pit import dataset_fingerprint, pit_dataset
from transforms.spec import load_spec


def test_registry_is_stale_when_missing_or_trained_on_another_spec(tmp_path):
    reg = tmp_path / "registry.json"
    assert not registry_is_current(reg, "v1")
    (tmp_path / "m.onnx").write_bytes(b"x")
    reg.write_text(json.dumps({"models": [{"path": "m.onnx", "feature_set_version": "v1"}]}))
    assert not registry_is_current(reg, "v1")  # registered before latency was recorded
    reg.write_text(json.dumps({"models": [{"path": "m.onnx", "feature_set_version": "v1", "latency": {"p99_ms": 1}}]}))
    assert registry_is_current(reg, "v1")
    assert not registry_is_current(reg, "v2")
    (tmp_path / "m.onnx").unlink()
    assert not registry_is_current(reg, "v1")


def test_training_data_is_the_point_in_time_dataset():
    spec = load_spec()
    events = list(generate_events(5_000, TrafficConfig(seed=3, n_users=200, out_of_order_fraction=0.05)))
    ds = labelled_dataset(spec, events)
    rows = pit_dataset(spec, events)
    assert ds.fingerprint == dataset_fingerprint(rows)
    assert ds.x.shape == (len(rows), len(spec.model_feature_names))
    assert ds.y.tolist() == [r["label"] for r in rows]
    again = dataset_from_rows(spec, rows)
    assert (again.x == ds.x).all() and again.fingerprint == ds.fingerprint

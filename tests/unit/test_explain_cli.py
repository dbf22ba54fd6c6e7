"""``streamscore explain`` on the trained registry: importance and ablation per feature."""

from __future__ import annotations

import json

from jobs.experiment import group_fairness
from jobs.explain import main
from jobs.paths import REGISTRY
from transforms.spec import load_spec


def test_explain_ranks_every_feature_with_both_methods(capsys):
    if not REGISTRY.exists():  # `make test` trains first (make models)
        from models.train import main as train

        train(["--events", "200000"])
    assert main(["--events", "60000", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = {f["feature"] for f in res["features"]}
    assert names == set(load_spec().model_feature_names)
    assert all(f["sensitivity"] >= 0 and f["tree_shap"] is not None and f["tree_shap"] >= 0 for f in res["features"])
    top = res["features"][0]
    assert top["ablation_logloss_rise"] > 0.01 and top["ablation_auc_drop"] > 0  # some feature matters
    assert 0.5 < res["base"]["auc"] <= 1.0


def test_explain_refuses_an_unknown_model(capsys):
    assert main(["--model", "nope", "--events", "1000"]) == 2
    assert "no model nope" in capsys.readouterr().err


def test_group_fairness_from_subgroup_metric_rows():
    rec = {"eval_window_start_ms": 0, "role": "group", "n": 200, "positives": 50, "model_name": "m",
           "model_version": "1"}
    rows = group_fairness([dict(rec, arm="region=eu", sum_score=80.0, above_threshold=100),
                           dict(rec, arm="region=na", sum_score=40.0, above_threshold=20),
                           dict(rec, role="served", arm="active", sum_score=1.0)])
    assert [(r["group"], r["positive_rate"]) for r in rows] == [("eu", 0.5), ("na", 0.1)]
    assert group_fairness([dict(rec, role="served", arm="active", sum_score=1.0)]) is None

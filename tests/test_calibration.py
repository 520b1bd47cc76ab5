"""Calibrated scores (runtime/calibration.py): temperature fitting, ECE, NLL, the acceptance
threshold and AUROC, on synthetic logits whose true calibration is known."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alexnet_onnx.runtime import calibration as cal


def sampled(n: int, classes: int = 10, scale: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): a perfectly calibrated model by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, (n, classes))
    probs = cal.softmax(logits)
    labels = (probs.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.6, 1.0, 2.5])
def test_fit_recovers_the_temperature_of_an_over_or_under_confident_model(true_t):
    logits, labels = sampled(20_000)
    # The model reports logits * T: softmax(model / T) is the calibrated softmax again.
    fitted = cal.fit_temperature(logits * true_t, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert cal.nll(logits * true_t, labels, fitted) <= cal.nll(logits * true_t, labels, 1.0) + 1e-12


def test_ece_of_a_perfectly_calibrated_set_is_near_zero_and_of_an_overconfident_one_is_not():
    logits, labels = sampled(50_000)
    assert cal.ece(logits, labels) < 0.01
    assert cal.ece(logits * 3, labels) > 0.1
    assert cal.ece(logits * 3, labels, temperature=3) == pytest.approx(cal.ece(logits, labels))


def test_ece_floor_is_what_sampling_alone_gives_and_shrinks_with_more_images():
    few_logits, few_labels = sampled(300, seed=1)
    many_logits, _ = sampled(30_000, seed=1)
    few = cal.max_softmax(few_logits)
    floor_few, floor_many = cal.ece_floor(few), cal.ece_floor(cal.max_softmax(many_logits))
    # About 1/sqrt(n): 100 times the images, roughly a tenth of the floor.
    assert floor_many < 0.01 < floor_few and floor_few > 5 * floor_many
    # A perfectly calibrated set of 300 measures ECE of the floor's order, an over-confident one far above it.
    assert floor_few / 3 < cal.ece(few_logits, few_labels) < 3 * floor_few
    assert cal.ece(few_logits * 3, few_labels) > 3 * cal.ece_floor(cal.max_softmax(few_logits * 3))
    assert cal.ece_floor(few, seed=0) == cal.ece_floor(few, seed=0) == float(np.median(cal.ece_draws(few, seed=0)))
    with pytest.raises(ValueError):
        cal.ece_floor(np.array([]))


def test_ece_by_hand():
    # Two bins in use: confidence 0.9 (two right of two) and 0.6 (one right of two).
    confidence = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([True, True, True, False])
    assert cal.ece_of(confidence, correct) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    # A bin's upper edge belongs to it: 1/15 sits in the first bin, just above it in the second.
    bins = cal.reliability(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0]), np.array([1, 1, 0, 1], bool))
    assert [b[0] for b in bins][:2] == [2, 1] and bins[-1][0] == 1 and sum(b[0] for b in bins) == 4


def test_nll_and_energy_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    labels = np.array([0, 1])
    expected = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(0.5)) / 2
    assert cal.nll(logits, labels) == pytest.approx(expected)
    assert cal.energy(logits, 2.0) == pytest.approx([math.log(math.e + 1), math.log(2)])
    assert cal.max_softmax(logits, 2.0) == pytest.approx([math.e / (math.e + 1), 0.5])


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(2, 6)),
              elements=st.floats(-50, 50, width=32)),
       st.floats(0.01, 100))
def test_temperature_never_changes_the_top_label(logits, temperature):
    # The top logit keeps the top probability at any T (up to float rounding: logits 1e-17
    # apart give equal probabilities at T = 1 and not at T = 0.25); the runtime ranks by logits.
    top, rows = logits.argmax(1), np.arange(len(logits))
    for probs in (cal.softmax(logits, temperature), cal.softmax(logits)):
        assert np.allclose(probs[rows, top], probs.max(1), rtol=1e-12, atol=0)
    assert np.allclose(cal.softmax(logits, temperature).sum(1), 1)


@pytest.mark.parametrize("n", [20, 99, 100, 1000, 4567])
def test_threshold_accepts_the_documented_share_of_its_own_data(n):
    scores = np.random.default_rng(n).normal(size=n)
    threshold = cal.threshold_for(scores)
    accepted = (scores >= threshold).mean()
    assert cal.ACCEPT_RATE <= accepted < cal.ACCEPT_RATE + 1 / n + 1e-12


def test_threshold_with_ties_accepts_at_least_the_rate():
    scores = np.array([0.5] * 10 + [0.9] * 90)
    assert cal.threshold_for(scores) == 0.5  # rejecting 5 of the tied ten would reject them all


def test_auroc_by_hand_and_bounds():
    assert cal.auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert cal.auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert cal.auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    # Pairs (in, out): (2,1) win, (2,3) loss, (4,1) win, (4,3) win -> 3/4.
    assert cal.auroc(np.array([2.0, 4.0]), np.array([1.0, 3.0])) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    inside, outside = rng.normal(1, 1, 2000), rng.normal(0, 1, 3000)
    brute = ((inside[:, None] > outside[None]).mean() + 0.5 * (inside[:, None] == outside[None]).mean())
    assert cal.auroc(inside, outside) == pytest.approx(brute)


def test_false_accept_rate():
    assert cal.false_accept_rate(np.array([0.1, 0.5, 0.9, 1.0]), 0.5) == 0.75


def test_acceptance_rule():
    logits = np.array([[5.0, 0.0], [0.1, 0.0]])
    assert cal.Acceptance().accepts(logits).tolist() == [True, True]
    assert cal.Acceptance("max_softmax", 0.9).accepts(logits).tolist() == [True, False]
    # At T = 10 the first image's top probability falls to 0.62.
    assert cal.Acceptance("max_softmax", 0.9, temperature=10).accepts(logits).tolist() == [False, False]
    assert cal.Acceptance("energy", 2.0).accepts(logits).tolist() == [True, False]
    with pytest.raises(ValueError, match="valid: max_softmax, energy"):
        cal.Acceptance("entropy", 0.5)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_temperature_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="temperature"):
        cal.softmax(np.zeros((1, 2)), bad)


def test_fit_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="labeled logits"):
        cal.fit_temperature(np.zeros((0, 3)), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="finite"):
        cal.fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))


# --- The runtime: calibrated scores, `accepted`, and the overrides ---------------------------------

import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from conftest import make_image  # noqa: E402
from alexnet_onnx.runtime import Predictor  # noqa: E402
from alexnet_onnx.runtime.cli import main as predict_main  # noqa: E402
from alexnet_onnx.runtime.contract import Contract  # noqa: E402
from alexnet_onnx.runtime.errors import UsageError  # noqa: E402


def predict(*args):
    return CliRunner().invoke(predict_main, [str(a) for a in args])


def model_with(exported_model, path, **changes):
    """The tiny exported model with its contract changed (the graph untouched); `version_1=True`
    writes the metadata a model exported before contract version 2 has."""
    import onnx

    from alexnet_onnx.export.onnx_export import set_contract

    proto = onnx.load(str(exported_model))
    contract = Contract.from_metadata({p.key: p.value for p in proto.metadata_props})
    if changes.pop("version_1", False):
        contract = contract.with_(temperature=1.0, accept_threshold=None, contract_version="1")
    set_contract(proto, contract.with_(**changes))
    onnx.save(proto, str(path))
    return path


@pytest.fixture()
def photos(tmp_path):
    rng = np.random.default_rng(7)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        make_image(i % 3, (40 + i, 36), rng).save(folder / f"{i}.png")
    return sorted(folder.glob("*.png"))


def plain_softmax(logits):
    """The softmax rows were built from before scores were calibrated, verbatim."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_a_version_1_model_loads_and_its_rows_only_gain_accepted_true(exported_model, tmp_path, photos):
    old = model_with(exported_model, tmp_path / "v1.onnx", version_1=True)
    p = Predictor(old)
    assert p.contract.contract_version == "1" and p.contract.temperature == 1.0
    result = predict("-m", old, "--format", "json", "--top-k", "3", *photos)
    assert result.exit_code == 0, result.output
    probs = plain_softmax(p.logits(np.stack([p.preprocess(f) for f in photos])))
    for line, row_probs, path in zip(result.stdout.splitlines(), probs, photos):
        order = np.argsort(-row_probs, kind="stable")[:3]
        before = {"path": str(path), "label": p.labels[order[0]], "score": float(row_probs[order[0]]),
                  "top_k": [{"label": p.labels[i], "score": float(row_probs[i])} for i in order]}
        assert line == json.dumps({**before, "accepted": True})


def test_scores_are_softmax_of_logits_over_the_temperature(exported_model, tmp_path, photos):
    model = model_with(exported_model, tmp_path / "t.onnx", temperature=2.5, accept_threshold=None)
    p = Predictor(model)
    logits = p.logits(np.stack([p.preprocess(f) for f in photos]))
    for pred, row in zip(p.predict(photos, top_k=3), logits):
        expected = plain_softmax(row[None].astype(np.float64) / 2.5)[0]
        assert pred.score == pytest.approx(expected.max(), abs=1e-12)
        assert pred.label == p.labels[int(row.argmax())] and pred.accepted


@pytest.fixture()
def rejecting(exported_model, tmp_path):
    """A model whose rule accepts no image: an energy threshold far above any logit."""
    return model_with(exported_model, tmp_path / "r.onnx", accept_score="energy", accept_threshold=1e9)


def test_an_image_below_the_threshold_is_unknown_with_its_best_guess_and_exit_0(rejecting, photos):
    text = predict("-m", rejecting, "--top-k", "2", photos[0])
    assert text.exit_code == 0, text.output
    best = Predictor(rejecting).predict([photos[0]], top_k=2)[0]
    assert not best.accepted
    (label1, s1), (label2, s2) = best.top_k
    assert text.stdout == f"{photos[0]}\tunknown (best guess: {label1} {s1:.4f} | {label2} {s2:.4f})\n"
    rows = predict("-m", rejecting, "--format", "json", *photos)
    assert rows.exit_code == 0
    objs = [json.loads(line) for line in rows.stdout.splitlines()]
    assert [o["accepted"] for o in objs] == [False] * len(photos) and all(o["label"] and o["score"] > 0 for o in objs)
    table = list(csv.DictReader(io.StringIO(predict("-m", rejecting, "--format", "csv", photos[0]).stdout)))
    assert [r["accepted"] for r in table] == ["false"] and table[0]["label"] == label1


def test_accept_all_and_min_confidence_override_the_models_rule(rejecting, photos):
    everything = predict("-m", rejecting, "--format", "json", "--accept-all", *photos)
    assert everything.exit_code == 0
    objs = [json.loads(line) for line in everything.stdout.splitlines()]
    assert all(o["accepted"] for o in objs)
    assert "unknown" not in predict("-m", rejecting, "--accept-all", *photos).stdout
    scores = sorted(o["score"] for o in objs)
    cut = (scores[2] + scores[3]) / 2  # half the photos above, half below
    ruled = [json.loads(line) for line in predict("-m", rejecting, "--format", "json", "--min-confidence", cut,
                                                  *photos).stdout.splitlines()]
    assert [o["accepted"] for o in ruled] == [o["score"] >= cut for o in ruled] and sum(o["accepted"] for o in ruled) == 3
    api = Predictor(rejecting, min_confidence=cut).predict(photos)
    assert [x.accepted for x in api] == [o["accepted"] for o in ruled]
    assert all(x.accepted for x in Predictor(rejecting, accept_all=True).predict(photos))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--min-confidence", "0.5", "--accept-all"], "not both"),
        (["--min-confidence", "1.5"], "0<=x<=1"),
        (["--accept-all", "--ray", "local"], "not available with --ray"),
    ],
)
def test_override_usage_errors_exit_2(exported_model, photos, args, message):
    result = predict("-m", exported_model, *args, photos[0])
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("kwargs,message", [({"min_confidence": 2.0}, "probability"),
                                            ({"min_confidence": float("nan")}, "probability"),
                                            ({"min_confidence": 0.5, "accept_all": True}, "not both")])
def test_api_override_errors(exported_model, kwargs, message):
    with pytest.raises(UsageError, match=message):
        Predictor(exported_model, **kwargs)


def test_ranks_follow_the_logits_where_a_small_temperature_underflows_the_scores(exported_model, tmp_path):
    p = Predictor(model_with(exported_model, tmp_path / "cold.onnx", temperature=0.001))
    pred = p.prediction(np.array([0.0, -2.0, -1.0], np.float32), top_k=3)
    assert [label for label, _ in pred.top_k] == [p.labels[0], p.labels[2], p.labels[1]]
    assert [score for _, score in pred.top_k] == [1.0, 0.0, 0.0]  # exp(-1000) is 0 in float64

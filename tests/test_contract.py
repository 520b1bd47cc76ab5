import json

import pytest

from alexnet_onnx.runtime.contract import CONTRACT_VERSION, Contract, ContractError, Preprocess


def make_contract(**changes) -> Contract:
    base = dict(
        labels=("cat", "dog", "ému ü"),
        preprocess=Preprocess(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        arch="alexnet",
        dataset="folder",
        metrics={"val_top1": 0.875, "val_split": "val/"},
        source_checkpoint_sha256="ab" * 32,
        created_with="alexnet-onnx 0.1.0",
    )
    return Contract(**{**base, **changes})


def test_round_trip_is_lossless():
    contract = make_contract()
    meta = contract.to_metadata()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert Contract.from_metadata(meta) == contract


def test_metadata_is_json_not_python_repr():
    meta = make_contract().to_metadata()
    assert meta["contract_version"] == CONTRACT_VERSION == "2"
    assert json.loads(meta["labels"]) == ["cat", "dog", "ému ü"]
    pre = json.loads(meta["preprocess"])
    assert pre["resize"] == 256 and pre["crop"] == 224 and pre["interpolation"] == "bilinear"
    assert pre["color"] == "RGB" and pre["layout"] == "NCHW" and pre["scale"] == "1/255"
    assert pre["mean"] == [0.485, 0.456, 0.406] and "image_policy" in pre
    assert json.loads(meta["metrics"])["val_top1"] == 0.875
    assert meta["variant"] == "fp32"


@pytest.mark.parametrize("key", ["labels", "preprocess", "arch", "dataset", "variant"])
def test_missing_key_is_refused(key):
    meta = make_contract().to_metadata()
    del meta[key]
    with pytest.raises(ContractError, match=key):
        Contract.from_metadata(meta)


def test_no_contract_at_all():
    with pytest.raises(ContractError, match="contract_version"):
        Contract.from_metadata({"producer": "someone else"})


def test_unknown_version_is_refused_clearly():
    meta = make_contract().to_metadata()
    meta["contract_version"] = "3"
    with pytest.raises(ContractError, match="'3' is not supported.*upgrade"):
        Contract.from_metadata(meta)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("labels", "not json", "not valid JSON"),
        ("labels", '{"a": 1}', "JSON list"),
        ("labels", "[]", "non-empty"),
        ("labels", '["a", "a"]', "unique"),
        ("preprocess", '{"resize": 256}', "malformed"),
        ("preprocess", json.dumps({"resize": 224, "crop": 256, "mean": [0, 0, 0], "std": [1, 1, 1]}), "must not exceed"),
        ("preprocess", json.dumps({"resize": 8, "crop": 8, "mean": [0, 0, 0], "std": [1, 0, 1]}), r"std must lie in"),
        # Values that once passed validation but could not work (every image failed, or gave nan).
        ("preprocess", '{"resize": 1' + "0" * 400 + ', "crop": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}', "1 to 4096"),
        ("preprocess", json.dumps({"resize": 70000, "crop": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}), "1 to 4096"),
        ("preprocess", json.dumps({"resize": 8, "crop": 8, "mean": [0, 0, 0], "std": [1, 1e-50, 1]}), r"std must lie in"),
        ("preprocess", json.dumps({"resize": 8, "crop": 8, "mean": [1e300, 0, 0], "std": [1, 1, 1]}), "mean must lie"),
        ("preprocess", '{"resize": 8, "crop": 8, "mean": [1' + "0" * 400 + ', 0, 0], "std": [1, 1, 1]}', "finite numbers"),
        ("preprocess", json.dumps({"resize": 8, "crop": 8, "mean": [True, 0, 0], "std": [1, 1, 1]}), "finite numbers"),
        ("labels", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("metrics", '{"a":' * 50_000 + "1" + "}" * 50_000, "not valid JSON"),
        ("preprocess", json.dumps({"resize": 8, "crop": 8, "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "nearest"}), "bilinear"),
        ("variant", "int4", "unknown"),
    ],
)
def test_malformed_values_are_refused(key, value, message):
    meta = make_contract().to_metadata()
    meta[key] = value
    with pytest.raises(ContractError, match=message):
        Contract.from_metadata(meta)


def test_contract_is_frozen():
    contract = make_contract()
    with pytest.raises(Exception):
        contract.arch = "other"  # type: ignore[misc]
    assert contract.with_(variant="int8").variant == "int8" and contract.variant == "fp32"


def version_1_metadata() -> dict[str, str]:
    """What a model exported before scores were calibrated carries: no temperature, no acceptance."""
    meta = make_contract().to_metadata()
    del meta["temperature"], meta["acceptance"]
    meta["contract_version"] = "1"
    return meta


def test_version_1_reads_as_temperature_1_and_accepting_everything():
    contract = Contract.from_metadata(version_1_metadata())
    assert contract.contract_version == "1" and contract.temperature == 1.0 and contract.accept_threshold is None
    # Written back, it stays a version-1 contract: nothing it never had is added.
    assert contract.to_metadata() == version_1_metadata()


def test_version_1_cannot_hold_a_temperature():
    with pytest.raises(ContractError, match="version '1' has no temperature"):
        make_contract(contract_version="1", temperature=2.0)


@pytest.mark.parametrize("score,threshold", [("energy", -3.25), ("max_softmax", 0.4123456789012345), ("energy", None)])
def test_calibration_round_trip(score, threshold):
    contract = make_contract(temperature=1.7234567890123457, accept_score=score, accept_threshold=threshold)
    meta = contract.to_metadata()
    assert float(meta["temperature"]) == contract.temperature
    assert json.loads(meta["acceptance"]) == {"score": score, "threshold": threshold}
    assert Contract.from_metadata(meta) == contract


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("temperature", "warm", "'temperature' must be a number"),
        ("temperature", "0", "temperature must be a number from"),
        ("temperature", "nan", "temperature must be a number from"),
        ("temperature", "1e9", "temperature must be a number from"),
        ("acceptance", "[]", "JSON dict"),
        ("acceptance", '{"score": "energy"}', "must hold 'score' and 'threshold'"),
        ("acceptance", '{"score": "entropy", "threshold": 1}', "valid: max_softmax, energy"),
        ("acceptance", '{"score": "energy", "threshold": NaN}', "finite number or null"),
        ("acceptance", '{"score": "energy", "threshold": "1"}', "finite number or null"),
        ("acceptance", '{"score": "max_softmax", "threshold": 1.5}', "probability"),
    ],
)
def test_malformed_calibration_is_refused(key, value, message):
    meta = make_contract().to_metadata()
    meta[key] = value
    with pytest.raises(ContractError, match=message):
        Contract.from_metadata(meta)


@pytest.mark.parametrize("key", ["temperature", "acceptance"])
def test_version_2_requires_its_calibration_keys(key):
    meta = make_contract().to_metadata()
    del meta[key]
    with pytest.raises(ContractError, match=f"missing key.*{key}"):
        Contract.from_metadata(meta)

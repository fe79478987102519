import numpy as np
import pandas as pd
import pytest

from raypipe.data.groups import get_scheme
from raypipe.data.splits import SplitParams, load, make_splits, save


def fake_manifest(n_patients=400, seed=0) -> pd.DataFrame:
    """Patients with 1-3 studies (AP + Lat each) at increasing ages, 30% fractures, 5% metal."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        age = rng.uniform(0.5, 15)
        for s in range(rng.integers(1, 4)):
            age = min(age + rng.uniform(0, 2), 19)
            frac, metal = int(rng.random() < 0.3), bool(rng.random() < 0.05)
            for proj in ("AP", "Lat"):
                rows.append({"image_id": f"{p}-{s}-{proj}", "path": "x", "patient_id": f"p{p}",
                             "study_id": f"p{p}/{s}", "age": round(age, 1), "sex": "F", "projection": proj,
                             "label": frac, "metal": metal, "text_boxes": "", "source": "test"})
    rows.append({**rows[0], "image_id": "oblique", "projection": "Oblique"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def split_result():
    m = fake_manifest()
    return m, make_splits(m, get_scheme("4group"), SplitParams(test_per_class=3, seed=1))


def test_no_patient_in_two_splits(split_result):
    m, s = split_result
    used = m.assign(split=s["split"])[s["split"] != "excluded"]
    assert (used.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(used["split"]) == {"train", "val", "test"}


def test_fixed_test_holds_k_per_class_per_age_bin_where_available(split_result):
    m, s = split_result
    k = 3
    eligible = m[(m["projection"] != "Oblique") & ~m["metal"]]
    cell = lambda d: d["projection"] + "|" + np.floor(d["age"]).astype(int).astype(str) + "|" + d["label"].astype(str)  # noqa: E731
    available = cell(eligible).value_counts()
    in_test = cell(m[s["split"] == "test"]).value_counts()
    for c, n in available.items():
        assert in_test.get(c, 0) == min(k, n), c


def test_metal_and_oblique_excluded_by_default(split_result):
    m, s = split_result
    assert (s.loc[m["metal"].to_numpy(), "split"] == "excluded").all()
    assert s.loc[m["image_id"] == "oblique", "reason"].item() == "oblique"
    with_metal = make_splits(m, get_scheme("4group"), SplitParams(test_per_class=3, include_metal=True))
    assert (with_metal.loc[m["metal"].to_numpy(), "split"] != "excluded").any()


def test_val_fraction_and_strata(split_result):
    m, s = split_result
    tv = m.assign(split=s["split"])[s["split"].isin(["train", "val"])]
    frac = (tv["split"] == "val").mean()
    assert 0.12 < frac < 0.28
    # every projection x label stratum is represented in val
    assert tv[tv["split"] == "val"].groupby(["projection", "label"]).size().min() > 5


def test_deterministic_and_seed_dependent():
    m = fake_manifest(120)
    a = make_splits(m, get_scheme("4group"), SplitParams(seed=3))
    b = make_splits(m, get_scheme("4group"), SplitParams(seed=3))
    c = make_splits(m, get_scheme("4group"), SplitParams(seed=4))
    assert a.equals(b) and not a["split"].equals(c["split"])


def test_save_load_hash_roundtrip(tmp_path):
    m = fake_manifest(50)
    s = make_splits(m, get_scheme("4group"), SplitParams())
    h = save(s, tmp_path / "splits.csv", SplitParams(), "datahash")
    loaded, h2 = load(tmp_path / "splits.csv")
    assert h == h2 and loaded["split"].tolist() == s["split"].tolist()
    assert not list(tmp_path.glob(".*tmp"))


def test_the_test_set_never_eats_the_data():
    """300 patients at the default K=10 would put most of them in test; K is lowered, with a warning. With
    60, even K=1 would: cells are filled up to the share."""
    m = fake_manifest(300)
    with pytest.warns(UserWarning, match="test_per_class 10 would put more than 30% of the 29[0-9] patients"):
        s = make_splits(m, get_scheme("4group"), SplitParams(test_per_class=10))
    used = m.assign(split=s["split"])
    test_patients = used[used["split"].isin(["test"]) | (s["reason"] == "test patient, cell full")]
    assert 0.1 * 300 < test_patients["patient_id"].nunique() <= 0.3 * 300  # (294 without metal)

    m = fake_manifest(60)
    with pytest.warns(UserWarning, match="even test_per_class 1"):
        s = make_splits(m, get_scheme("4group"), SplitParams(test_per_class=10))
    used = m.assign(split=s["split"])
    test_patients = used[used["split"].isin(["test"]) | (s["reason"] == "test patient, cell full")]
    assert 0 < test_patients["patient_id"].nunique() <= 0.3 * m["patient_id"].nunique()
    assert (s["split"] == "train").sum() > (s["split"] == "test").sum()


def test_a_model_seed_replicate_keeps_the_test_set():
    from raypipe.config import TrainConfig
    from raypipe.data.prepare import split_params

    m = fake_manifest(200)
    a, b = (make_splits(m, get_scheme("4group"), split_params(TrainConfig(test_per_class=3, seed=s)))
            for s in (0, 7))
    assert a.equals(b)
    c = make_splits(m, get_scheme("4group"), split_params(TrainConfig(test_per_class=3, split_seed=7)))
    assert not a.equals(c)


def test_k_zero_means_no_test_set_whatever_the_cap():
    s = make_splits(fake_manifest(40), get_scheme("4group"), SplitParams(test_per_class=0))
    assert (s["split"] == "test").sum() == 0


def mura_like(n_train=60, n_valid=15, seed=0) -> pd.DataFrame:
    """A MURA-shaped manifest: no ages, no projections, the source's own test split marked held_out."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_train + n_valid):
        held = p >= n_train
        for s in range(rng.integers(1, 3)):
            label = int(rng.random() < 0.4)
            for i in range(rng.integers(1, 4)):
                rows.append({"image_id": f"{'valid' if held else 'train'}/p{p}/s{s}/{i}", "path": "x",
                             "patient_id": f"p{p}", "study_id": f"p{p}/s{s}", "age": np.nan, "sex": "U",
                             "projection": "U", "label": label, "metal": False, "text_boxes": "",
                             "source": "mura", "held_out": held})
    return pd.DataFrame(rows)


def test_a_source_test_split_is_the_fixed_test_set_whole():
    """MURA's valid split is the test set, every image of it (no age-bin cut: there are no ages, and a cut
    at test_per_class would keep a handful); train/val come from the source's train split only."""
    m = mura_like()
    s = make_splits(m, get_scheme("4group"), SplitParams(test_per_class=2, seed=1))
    assert (s["split"] == "test").to_numpy().tolist() == m["held_out"].tolist()
    rest = s.loc[~m["held_out"].to_numpy(), "split"]
    assert set(rest) == {"train", "val"} and 0.1 < (rest == "val").mean() < 0.35
    used = m.assign(split=s["split"])
    assert (used.groupby("patient_id")["split"].nunique() == 1).all()  # patients never cross
    assert s.equals(make_splits(m, get_scheme("4group"), SplitParams(test_per_class=2, seed=1)))


def test_a_patient_in_the_source_test_split_never_trains():
    """A hand-assembled set whose patient has studies in both of the source's splits: the training-side
    images are excluded with a reason, not trained on next to their test twins."""
    m = mura_like()
    twin = m[m["held_out"]].iloc[0]
    extra = {**twin.to_dict(), "image_id": "train/twin/0", "study_id": f"{twin['patient_id']}/old",
             "held_out": False}
    m = pd.concat([m, pd.DataFrame([extra])], ignore_index=True)
    s = make_splits(m, get_scheme("4group"), SplitParams(seed=1))
    row = s[m["image_id"] == "train/twin/0"].iloc[0]
    assert (row["split"], row["reason"]) == ("excluded", "patient in the source's test split")
    test_patients = set(m.loc[(s["split"] == "test").to_numpy(), "patient_id"])
    trained = set(m.loc[s["split"].isin(["train", "val"]).to_numpy(), "patient_id"])
    assert not test_patients & trained


@pytest.mark.parametrize("n_patients", [6, 12])
def test_a_tiny_set_still_gets_a_validation_split(n_patients):
    """With every stratum (projection x age group x label) rarer than the folds, sklearn refuses to
    stratify at all: the split keeps the label balance alone, or only the patient grouping, and never
    stops with a traceback."""
    m = fake_manifest(n_patients, seed=3)
    s = make_splits(m, get_scheme("4group"), SplitParams(test_per_class=0, val_fraction=0.2, seed=0))
    used = m.assign(split=s["split"].to_numpy())
    assert (used["split"] == "val").any() and (used["split"] == "train").any()
    val, train = (set(used.loc[used["split"] == k, "patient_id"]) for k in ("val", "train"))
    assert not val & train

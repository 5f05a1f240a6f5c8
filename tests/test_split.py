import numpy as np
import pandas as pd
import pytest

from covidxr.data.manifest import conform
from covidxr.data.split import assign_splits, balance_classes, find_leaks, parse_fractions, split_units
from covidxr.errors import UsageError


def _table(patients: int, images_per_patient: int = 2, covid_share: float = 0.3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(patients):
        label = "covid" if rng.random() < covid_share else "non-covid"
        for image in range(images_per_patient):
            rows.append({"image_id": f"p{patient}-{image}", "patient_id": f"s:{patient}", "label": label,
                         "dup_group": f"d{patient}-{image}"})
    return conform(pd.DataFrame(rows))


def test_units_join_patients_through_duplicate_groups():
    table = conform(pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e"], "patient_id": ["p1", "p1", "p2", "p3", "p4"],
        "dup_group": ["g1", "g2", "g2", "g3", "g4"],
    }))
    units = split_units(table).tolist()
    assert units[0] == units[1] == units[2]
    assert len({units[0], units[3], units[4]}) == 3


def test_split_is_patient_level_stratified_and_seeded():
    table = _table(400)
    split = assign_splits(table, seed=3)
    assert find_leaks(split).empty
    per_patient = split.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    shares = split["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.05) and shares["test"] == pytest.approx(0.15, abs=0.04)
    covid_share = split.groupby("split")["label"].apply(lambda s: (s == "covid").mean())
    assert covid_share.max() - covid_share.min() < 0.08
    assert split["split"].tolist() == assign_splits(table, seed=3)["split"].tolist()
    assert split["split"].tolist() != assign_splits(table, seed=4)["split"].tolist()
    assert split["fold"].isna().all()


def test_a_duplicate_across_patients_keeps_both_in_one_split():
    table = _table(200)
    table.loc[table["image_id"] == "p7-0", "dup_group"] = "shared"
    table.loc[table["image_id"] == "p150-1", "dup_group"] = "shared"
    split = assign_splits(table, seed=1)
    assert split.loc[split["patient_id"].isin(["s:7", "s:150"]), "split"].nunique() == 1


def test_folds_cover_train_and_val_only_and_group_patients():
    split = assign_splits(_table(300), folds=5, seed=0)
    test_rows = split["split"] == "test"
    assert split.loc[test_rows, "fold"].isna().all()
    assert set(split.loc[~test_rows, "fold"]) == {0, 1, 2, 3, 4}
    assert (split[~test_rows].groupby("patient_id")["fold"].nunique() == 1).all()
    assert find_leaks(split).empty


def test_custom_fractions_and_tiny_data():
    split = assign_splits(_table(400), fractions=(0.8, 0.0, 0.2))
    assert set(split["split"]) == {"train", "test"}
    tiny = assign_splits(_table(6, covid_share=0.5))
    assert set(tiny["split"]) == {"train", "val", "test"}
    with pytest.raises(UsageError, match="need at least 2"):
        assign_splits(_table(1))
    with pytest.raises(UsageError, match="folds=50: must be between 2"):
        assign_splits(_table(20), folds=50)


def test_find_leaks_names_patients_crossing_splits_and_folds():
    split = assign_splits(_table(100), folds=3)
    patient = split.loc[split["split"] == "train", "patient_id"].iloc[0]
    rows = split.index[split["patient_id"] == patient]
    split.loc[rows[0], "split"] = "test"
    split.loc[rows[0], "fold"] = pd.NA
    leaks = find_leaks(split)
    assert len(leaks) == 1 and leaks["patients"].item() == patient and "test" in leaks["splits"].item()
    refolded = assign_splits(_table(100), folds=3)
    development = refolded.index[refolded["split"] == "train"]
    first = refolded.loc[development[0], "patient_id"]
    same = refolded.index[refolded["patient_id"] == first]
    refolded.loc[same[0], "fold"] = (refolded.loc[same[1], "fold"] + 1) % 3
    assert find_leaks(refolded)["patients"].tolist() == [first]


@pytest.mark.parametrize("text", ["0.7,0.3", "0.5,0.5,0.5", "a,b,c", "0,0.5,0.5", "-0.1,0.6,0.5"])
def test_bad_fractions_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_fractions(text)


def test_balance_keeps_whole_patients_up_to_n_per_class():
    table = _table(300, images_per_patient=2, covid_share=0.2)
    keep = balance_classes(table, None, seed=0)
    kept = table[keep]
    counts = kept["label"].value_counts()
    assert counts["covid"] == (table["label"] == "covid").sum()
    assert counts["non-covid"] == counts["covid"]
    assert (kept.groupby("patient_id").size() == 2).all()
    fixed = table[balance_classes(table, 40, seed=0)]["label"].value_counts()
    assert fixed.to_dict() == {"covid": 40, "non-covid": 40}
    assert keep.tolist() == balance_classes(table, None, seed=0).tolist()
    assert keep.tolist() != balance_classes(table, None, seed=1).tolist()

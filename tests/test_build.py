import pytest

from covidxr.data import build, import_cohen, import_csv, summarize
from covidxr.errors import UsageError


@pytest.fixture
def imports(cohen_dir, normals_csv):
    cohen = import_cohen(cohen_dir)
    normals = import_csv(normals_csv, image_col="filename", label_col="finding",
                         root=normals_csv.parent / "normal_dataset", source="rsna")
    return cohen, normals


def test_build_labels_and_drops_unmapped_findings_naming_them(imports):
    result = build(list(imports), task="binary")
    manifest = result.manifest
    assert set(manifest["label"]) == {"covid", "non-covid"}
    unmapped = result.dropped[result.dropped["reason"] == "finding unmapped"]
    assert unmapped["finding"].tolist() == ["todo"]
    assert any("'todo' (1)" in line for line in result.lines)
    assert {"modality", "view", "file missing", "unreadable"} <= set(result.dropped["reason"])
    assert set(manifest["split"]) == {"train", "val", "test"}


def test_three_class_drops_lipoid_and_ards_alone(imports):
    result = build(list(imports), task="three-class")
    dropped = result.dropped.loc[result.dropped["reason"] == "finding unmapped", "finding"]
    assert sorted(dropped) == ["Lipoid", "todo"]
    assert set(result.manifest["label"]) == {"covid", "pneumonia", "normal"}


def test_double_listed_file_shares_group_and_split(imports):
    manifest = build(list(imports), task="binary").manifest
    double = manifest[manifest["path"].str.endswith("img9.jpg")]
    assert len(double) == 2 and double["dup_group"].nunique() == 1 and double["split"].nunique() == 1


def test_licence_exclusion_is_a_case_insensitive_pattern_including_unknown(imports):
    result = build(list(imports), task="binary", exclude_license="nc|^unknown$")
    excluded = result.dropped[result.dropped["reason"] == "license excluded"]
    assert set(excluded["license"]) == {"unknown"}
    assert "unknown" not in set(result.manifest["license"])
    with pytest.raises(UsageError, match="not a regular expression"):
        build(list(imports), task="binary", exclude_license="(")


def test_balance_drops_the_surplus_and_reports_it(imports):
    result = build(list(imports), task="binary", balance=True)
    counts = result.manifest["label"].value_counts()
    assert counts["covid"] == counts["non-covid"]
    assert (result.dropped["reason"] == "balance").sum() == 28 - 2 * counts["covid"]


def test_label_file_and_missing_task(imports, tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("binary:\n  COVID-19: covid\n  Normal: non-covid\n  todo: non-covid\n")
    result = build(list(imports), task="binary", labels=path)
    assert "todo" in set(result.manifest["finding"])
    assert "Streptococcus" in set(result.dropped["finding"])
    with pytest.raises(UsageError, match="no 'three-class' mapping"):
        build(list(imports), task="three-class", labels=path)


def test_summary_has_the_contract_keys(imports):
    result = build(list(imports), task="binary", folds=2)
    summary = summarize(result.manifest, result.dropped)
    assert set(summary) == {"images", "patients", "by_label", "by_source", "by_split", "duplicate_groups",
                            "largest_duplicate_group", "leaks", "dropped"}
    assert summary["images"] == len(result.manifest)
    assert summary["by_source"]["rsna"] == {"non-covid": 20}
    assert sum(sum(v.values()) for v in summary["by_split"].values()) == summary["images"]
    assert summary["duplicate_groups"] == 1 and summary["largest_duplicate_group"] == 2 and summary["leaks"] == 0
    assert summary["dropped"] == {"modality": 2, "view": 1, "file missing": 1, "unreadable": 1, "finding unmapped": 1}


def test_giving_one_manifest_twice_is_refused(imports):
    from covidxr.data import ManifestError

    with pytest.raises(ManifestError, match="image_id must be unique"):
        build([imports[0].manifest, imports[0].manifest], task="binary")


@pytest.mark.parametrize("name, content, problem", [
    ("binary.csv", b"\xff\xfe\x00 not text", "codec can't decode"),
    ("ragged.csv", b'image_id,path\n1,2,3,4\n"unterminated\n', "Error tokenizing data"),
    ("garbage.parquet", b"PAR1 garbage PAR1", "Parquet"),
])
def test_an_unreadable_manifest_is_named_with_the_parser_problem(tmp_path, name, content, problem):
    from covidxr.data import ManifestError, load_manifest

    (tmp_path / name).write_bytes(content)
    with pytest.raises(ManifestError, match=f"{name}: cannot read manifest .*{problem}"):
        load_manifest(tmp_path / name)

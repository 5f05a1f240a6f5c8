import pytest

from covidxr.data.labels import DEFAULT_TABLE, LabelTableError, label_for, load_label_table
from covidxr.errors import UsageError

SHARED_FINDINGS = [
    "COVID-19", "COVID-19, ARDS", "SARS", "Pneumocystis", "Pneumonia", "Streptococcus",
    "Mycoplasma Bacterial Pneumonia", "Legionella", "Varicella", "ARDS", "E.Coli", "Bacterial", "Klebsiella",
    "Chlamydophila", "Lipoid", "Influenza", "No Finding", "Normal",
]


@pytest.mark.parametrize("finding", SHARED_FINDINGS)
def test_every_published_finding_has_a_binary_label(finding):
    expected = "covid" if "COVID-19" in finding else "non-covid"
    assert label_for(finding, "binary") == expected


@pytest.mark.parametrize("finding, label", [
    ("COVID-19", "covid"), ("COVID-19, ARDS", "covid"), ("SARS", "pneumonia"), ("MERS", "pneumonia"),
    ("Pneumocystis", "pneumonia"), ("Streptococcus", "pneumonia"), ("Varicella", "pneumonia"),
    ("Bacterial", "pneumonia"), ("Viral", "pneumonia"), ("Fungal", "pneumonia"), ("Pneumonia", "pneumonia"),
    ("No Finding", "normal"), ("Normal", "normal"), ("ARDS", None), ("Lipoid", None),
])
def test_three_class_table(finding, label):
    assert label_for(finding, "three-class") == label


@pytest.mark.parametrize("finding", ["", "todo", "Unknown", "Tuberculosis", "  "])
def test_findings_outside_the_table_are_never_guessed(finding):
    assert label_for(finding, "binary") is None
    assert label_for(finding, "three-class") is None


def test_matching_is_case_insensitive_on_the_whole_string():
    assert label_for("  no finding ", "three-class") == "normal"
    assert label_for("covid-19 pneumonia", "binary") == "covid"
    assert label_for("Streptococcus pneumoniae", "binary") is None


def test_unknown_task_lists_the_accepted_ones():
    with pytest.raises(UsageError, match="accepted: binary, three-class"):
        label_for("COVID-19", "four-class")


def test_label_file_replaces_the_table(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("binary:\n  COVID-19: covid\n  Tuberculosis: non-covid\n")
    table = load_label_table(path)
    assert label_for("tuberculosis", "binary", table) == "non-covid"
    assert label_for("Normal", "binary", table) is None
    assert label_for("COVID-19, ARDS", "binary", table) == "covid"
    assert set(DEFAULT_TABLE) == {"binary", "three-class"}


@pytest.mark.parametrize("content, message", [
    ("- a\n- b\n", "expected a mapping"),
    ("four-class:\n  a: b\n", "unknown task"),
    ("binary: [a, b]\n", "must map finding strings"),
    ("binary: {a: [b]}\n", "must map finding strings"),
    ("binary: {a: b\n", "cannot read label table"),
])
def test_bad_label_files_are_usage_errors(tmp_path, content, message):
    path = tmp_path / "map.yaml"
    path.write_text(content)
    with pytest.raises(LabelTableError, match=message):
        load_label_table(path)

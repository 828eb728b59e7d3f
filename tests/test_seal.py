"""Issue 29, item 1: stores that prove themselves. Every derived table carries a sha256 in ``digests.json``,
recorded when it is written and checked when it is read; a damaged table is one line naming it, never a silently
wrong table. The committed stores are sealed, and this file fails when one of their tables drifts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stmedfm.core import seal
from stmedfm.cli import main
from stmedfm.core.errors import StmedfmError
from stmedfm.run.store import ResultStore
from stmedfm.analysis.tables import write_tables

ROOT = Path(__file__).resolve().parents[1]
#: Every committed folder of derived tables: the result stores and the variant studies.
COMMITTED = sorted(p.parent for p in (ROOT / "results").glob("*/metrics.csv"))


@pytest.fixture
def store_copy(tiny_store, tmp_path) -> ResultStore:
    return ResultStore(shutil.copytree(tiny_store.root, tmp_path / "S"))


def test_a_study_records_the_digest_of_every_table_and_run_it_wrote(tiny_store):
    doc = json.loads((tiny_store.root / seal.DIGESTS).read_text())
    for name in ("metrics.csv", "runs.csv", "pretrain_loss.csv", "per_class.csv", "confusion.csv",
                 "reliability.csv", "config.yaml"):
        assert doc["files"][name] == seal.sha256_file(tiny_store.root / name), name
    runs = sorted(p.stem for p in (tiny_store.root / "runs").glob("*.json"))
    assert sorted(doc["runs"]) == runs and seal.problems(tiny_store.root) == []


def test_a_truncated_metrics_table_is_one_line_naming_it(store_copy, capsys):
    """The issue's reproduction: `head -n 15 S/metrics.csv > S2/metrics.csv`; `stmedfm tables S2` exited 0 with rows
    gone. Now every reader refuses it in one line."""
    path = store_copy.root / "metrics.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:15]))
    for command in (["tables"], ["figures", "--out", str(store_copy.root / "fig")], ["report"]):
        assert main([*command, str(store_copy.root)]) == 2
        err = capsys.readouterr().err
        assert f"'{path}' is damaged" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (store_copy.root / "tables").exists()


def test_a_hand_edited_value_is_refused(store_copy):
    path = store_copy.root / "runs.csv"
    path.write_text(path.read_text().replace("bloodmnist", "bloodmnisT", 1))
    with pytest.raises(StmedfmError, match="runs.csv' is damaged"):
        store_copy.table("runs")
    with pytest.raises(StmedfmError, match="config.yaml' is damaged"):
        (store_copy.root / "config.yaml").write_text((store_copy.root / "config.yaml").read_text() + "\n# edited\n")
        store_copy.config()


def test_reader_tables_and_claims_are_sealed_when_written(store_copy, capsys):
    """Decision: tables/*.csv (stmedfm tables) and claims.csv (stmedfm report) are covered like the study's own
    tables: the README's generated blocks are read from them. tables/*.md are renderings and are not covered."""
    assert main(["tables", str(store_copy.root)]) == 0
    assert main(["report", str(store_copy.root)]) == 0
    doc = seal.load(store_copy.root)
    assert {"claims.csv", "paper_single_run.csv", "tables/table7_auroc.csv"} <= set(doc["files"])
    assert not any(name.endswith(".md") for name in doc["files"])
    assert seal.problems(store_copy.root) == []
    t7 = store_copy.root / "tables" / "table7_auroc.csv"
    t7.write_text(t7.read_text().replace("lora", "LoRA"))
    with pytest.raises(StmedfmError, match="table7_auroc.csv' is damaged"):
        seal.read_csv(store_copy.root, "tables/table7_auroc.csv")
    capsys.readouterr()
    assert main(["seal", "--check", str(store_copy.root)]) == 2
    assert "table7_auroc.csv' does not match its digest" in capsys.readouterr().out


def test_a_changed_run_record_and_an_unlisted_table_are_reported(store_copy, capsys):
    run = next((store_copy.root / "runs").glob("*.json"))
    run.write_text(run.read_text().replace('"seconds": ', '"seconds": 1', 1))
    (store_copy.root / "extra.csv").write_text("a\n1\n")
    problems = seal.problems(store_copy.root)
    assert any("changed since the tables were built" in p and run.name in p for p in problems)
    assert any("extra.csv' is not sealed" in p for p in problems)
    with pytest.warns(seal.UnsealedWarning, match="extra.csv' is not listed in .* read unchecked"):
        seal.read_csv(store_copy.root, "extra.csv")


def test_an_unsealed_store_warns_and_seal_vouches_for_it(store_copy):
    (store_copy.root / seal.DIGESTS).unlink()
    with pytest.warns(seal.UnsealedWarning, match="no digests.json"):
        write_tables(store_copy.root)
    assert main(["seal", str(store_copy.root)]) == 0
    assert seal.problems(store_copy.root) == []


@pytest.mark.parametrize("folder", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_tables_match_their_digests(folder):
    """A committed table that no longer matches the digest it was committed with fails here (rebuild it with the
    command that writes it, or, for tables you vouch for, `stmedfm seal` and commit digests.json)."""
    assert seal.problems(folder) == []
    assert "metrics.csv" in seal.load(folder)["files"]


def test_a_local_cache_listed_in_the_digests_is_not_missing_from_a_clone(tmp_path):
    """A store sealed where notebook 04 had saved inference weights (models/*.pt, gitignored) is whole in a clean
    clone without them (CI failed on results/offline); a changed or missing table still is not."""
    from stmedfm.core import seal

    (tmp_path / "metrics.csv").write_text("a\n1\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "run-x.pt").write_bytes(b"weights")
    seal.seal(tmp_path)
    (tmp_path / "models" / "run-x.pt").unlink()
    assert seal.problems(tmp_path) == []
    (tmp_path / "metrics.csv").unlink()
    assert seal.problems(tmp_path) == [f"'{tmp_path / 'metrics.csv'}' is sealed but missing"]

"""Generated sections (README tables, CITATION.cff references, paper claims tables) are up to date."""

from common.harness import scoreboard, spec


def test_generated_sections_are_up_to_date():
    stale = [str(path.relative_to(spec.REPO_ROOT)) for path, text in scoreboard.generated_files().items()
             if path.read_text() != text]
    assert not stale, f"out of date (run `make scoreboard` and commit): {stale}"


def test_index_has_the_documented_shape():
    index = scoreboard.build_index()
    assert len(index["papers"]) == 41
    for slug in spec.list_papers():
        entry = index["papers"][slug]
        assert entry["title"]
        for profile in spec.PROFILES:
            p = entry["profiles"][profile]
            assert p["verdict"] in ("Re", "partial", "not-Re", "inconclusive", "pending", "stale")
            for key in ("score", "claims", "duration_s", "device", "commit", "stale"):
                assert key in p
            for claim in p["claims"].values():
                assert claim["status"] in spec.CLAIM_STATUSES
                assert {"value", "paper_value"} <= set(claim)

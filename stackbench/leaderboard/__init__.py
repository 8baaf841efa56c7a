"""The leaderboard: a store of result records that anyone can add to (submit) and anyone can re-check (verify).

    leaderboard/
      tracks.json                                        the tracks: datasets (presets + pinned fingerprints), model
      results/<track>/<dataset>/<model>/<method>.json    stackbench.result/3 records, with a `submission` block
      results/<track>/<dataset>/<model>/<method>.parquet their per-image rows
      reported/paper.json                                numbers published elsewhere, not re-run
      methods/<row>/<file>.py                            submitted plugin code, copied in by submit
      verified.json                                      the badges: the rows the last full verify reproduced
      README.md, index.html, mu.png, axes.png            rendered by `stackbench leaderboard build`

Every row says what produced it and can be recomputed: `verify` checks the schema, the rows file's hash, that
the per-image rows aggregate to the stored numbers, the pinned fingerprints, and re-runs the method when it is
available here.

Modules: `store` (the folder and its layout), `tracks` (tracks.json and the pinned datasets), `checks` (verify),
`badges` (verified.json), `submission` (submit), `render` (README.md, index.html, charts), `hub` (the board as a
Hub dataset).
"""
from .badges import Badges, read_verified, record_verdicts, reproduced
from .checks import (
                     FAILED,
                     NOT_RERUN,
                     REL_TOL,
                     REPRODUCED,
                     RERUN_ATOL,
                     Verdict,
                     Verdicts,
                     check_record,
                     check_stored_row,
                     method_for,
                     rerun_row,
                     verify,
                     verify_row,
)
from .render import (
                     SECTIONS,
                     board,
                     board_intro,
                     build,
                     read_reported,
                     render_axes_chart,
                     render_chart,
                     render_html,
                     render_markdown,
                     reported,
                     reported_table,
                     sections,
                     table_header,
                     table_rows,
                     verified_cell,
)
from .store import (
                     DATASETS,
                     METHODS_DIR,
                     NAME_RE,
                     RENDERED,
                     VERIFIED,
                     default_store,
                     init_store,
                     resolve_store,
                     row_key,
                     row_path,
                     stem_for,
                     stored_rows,
)
from .submission import RULES, rules_text, submit
from .tracks import Track, cache_dir, get_track, load_tracks

__all__ = ["Badges", "DATASETS", "FAILED", "METHODS_DIR", "NAME_RE", "NOT_RERUN", "REL_TOL", "RENDERED",
           "REPRODUCED", "RERUN_ATOL", "RULES", "SECTIONS", "Track", "VERIFIED", "Verdict", "Verdicts", "board",
           "board_intro", "build", "cache_dir", "check_record", "check_stored_row", "default_store", "get_track",
           "init_store", "load_tracks", "method_for", "read_reported", "read_verified", "record_verdicts",
           "render_axes_chart", "render_chart", "render_html", "render_markdown", "reported", "reported_table",
           "reproduced", "rerun_row", "resolve_store", "row_key", "row_path", "rules_text", "sections", "stem_for",
           "stored_rows", "submit", "table_header", "table_rows", "verified_cell", "verify", "verify_row"]

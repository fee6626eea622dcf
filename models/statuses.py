"""The status of a message row, in ChatGPT's words."""

FINISHED = "finished_successfully"
IN_PROGRESS = "in_progress"
"""An answer still being written; its `lease_expires_at` says until when its process vouches for it."""
INTERRUPTED = "finished_partial_completion"
"""An answer that stopped before the upstream finished it (its `finish_details`: `interrupted`)."""

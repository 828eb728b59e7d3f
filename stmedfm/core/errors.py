"""The one exception type users see.

Every problem a user can act on (missing or corrupt data, a bad parameter, a failed download) is raised as
:class:`StmedfmError` with a one-paragraph message that says what is wrong and what to do. The CLI prints the
message without a traceback and exits with status 2; library users can catch this one type.
"""


class StmedfmError(Exception):
    """A user-actionable error of stmedfm (bad data, bad parameters, failed download)."""

    def _render_traceback_(self) -> list[str]:
        """What IPython (Jupyter, Colab, papermill) shows instead of a traceback: the message, one paragraph."""
        return [f"StmedfmError: {self}"]

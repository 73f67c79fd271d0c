"""The error of the analyses in `prompt_tuning.analysis`."""


class AnalysisError(ValueError):
    """An analysis's input is missing or inconsistent; the message names it and the fix."""

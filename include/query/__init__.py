"""The query side of RAG: questions in, answers with their sources out.

Plain Python (no Airflow import): ``steps`` holds the Ray Data callable classes,
``prompts`` the prompt and its token budget, ``pipeline`` the job (on Ray Data) and the
in-process path (``ask``, ``evaluate``), ``evaluation`` the scoring on question sets with
known answers. ``python -m include.query --help`` for the commands.
"""

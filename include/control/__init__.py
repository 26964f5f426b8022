"""The control plane: everything that runs in Airflow (the DAG processor, the workers, the triggerer).

Planning (``ingest``, ``incremental``, ``batching``, ``query_planning``), the Ray jobs' operators
(``operators``) and the sensors' checks (``dag_parts``), the ledger, quarantine and the run report.
It imports only light libraries (Airflow and its providers, boto3, SQLAlchemy, pydantic) and the
job contract it shares with the data plane (``include.contract``, ``include.settings``,
``include.storage``, ``include.documents``, ``include.fingerprints``); never a model, a vector
store, their credentials, or Ray Data. What a Ray job runs lives beside it, under ``include/``.
"""

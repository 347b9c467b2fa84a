"""Integrations with the frameworks a Celery deployment already runs.

``celery_romancy.contrib.django`` (a Django app: settings, ``romancy_migrate``,
``start_workflow_on_commit``), ``celery_romancy.contrib.flask`` (the ``init_app``
extension) and ``celery_romancy.contrib.status`` (a JSON summary for status views).
Each imports its framework only when imported itself.
"""

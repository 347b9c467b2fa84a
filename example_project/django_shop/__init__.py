"""The Django shop: a checkout view that starts the order saga when its transaction
commits, and a status view. Project and app in one package, to keep it small.

As in Celery's Django guide, the Celery app is imported with the project, so that
``manage.py romancy_migrate`` and the views find it.
"""

from example_project.celery_app import app as celery_app

__all__ = ["celery_app"]

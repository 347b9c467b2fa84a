from django.db import connection
from proj.celery import romancy

from celery_romancy import WorkflowContext


@romancy.activity("count_instances")
def count_instances() -> int:
    # The Django ORM's connection, in a prefork worker child; the history shares the database.
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM romancy_instances")
        return int(cursor.fetchone()[0])


@romancy.activity("greet")
def greet(name: str, instances: int) -> str:
    return f"hello {name}, instance {instances}"


@romancy.workflow("greeting")
def greeting(ctx: WorkflowContext, name: str) -> str:
    return greet.execute(ctx, name, count_instances.execute(ctx))

#!/usr/bin/env python
"""Django's command line for the example shop: python example_project/manage.py ..."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The repository root, so that ``example_project`` imports from anywhere.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.django_shop.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)

"""WSGI applications the tests serve with ``forkthread serve wsgi --app tests.wsgi_apps.MODULE:NAME``."""

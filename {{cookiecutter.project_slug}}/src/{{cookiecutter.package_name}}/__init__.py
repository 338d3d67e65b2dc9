"""{{ cookiecutter.project_name }}: the service's package."""

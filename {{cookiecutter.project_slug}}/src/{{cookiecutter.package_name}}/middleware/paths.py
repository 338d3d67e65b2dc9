"""Paths the layers treat apart from the API's own routes, named once."""

# The health checks (api/health.py): for load balancers and orchestrators, which carry
# no credentials and must not be rate-limited into restarting a healthy process.
HEALTH_PATHS = ("/health/live", "/health/ready")

# Copy to instance/config.py; every value can also come from the environment,
# which wins. See the configuration table in README.md.
# SECRET_KEY = "a long random string"            # required in production
# APP_ENV = "development"                        # development | testing | production
# DATABASE_URL = "postgresql://user@127.0.0.1:5432/recovery"   # default: SQLite in instance/
# REDIS_URL = "redis://127.0.0.1:6379/0"
# BASE_URL = "https://pay.example.com"
# ALLOWED_HOSTS = "pay.example.com"              # BASE_URL's host is always allowed
# PROXY_FIX = 1                                  # number of proxies in front of the app

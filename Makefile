# The commands everyone uses. The README names the first two.
.PHONY: run test lint typecheck check migration translations

run:            ## demo: venv, install, migrate, seed, web + worker (+ embedded Redis)
	bash scripts/run.sh

test:           ## the whole suite on SQLite and PostgreSQL, with Redis, RQ and Chromium
	bash scripts/test.sh

lint:
	bash scripts/bootstrap.sh && .venv/bin/ruff check . && .venv/bin/ruff format --check .

typecheck:
	bash scripts/bootstrap.sh && .venv/bin/mypy

check: lint typecheck test

migration:      ## make migration m="what changed"
	APP_ENV=development .venv/bin/flask --app wsgi db migrate -m "$(m)"

translations:   ## re-extract the customer message copy; update and compile every language's catalogue
	.venv/bin/pybabel extract -F babel.cfg -o recovery/translations/messages.pot --no-location --project=Recovery .
	if ls recovery/translations/*/LC_MESSAGES/messages.po >/dev/null 2>&1; then \
	  .venv/bin/pybabel update -i recovery/translations/messages.pot -d recovery/translations && \
	  .venv/bin/pybabel compile -d recovery/translations; fi

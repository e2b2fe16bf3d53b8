"""gunicorn's settings that the Procfiles' command lines do not give; read from the working directory.

Request lines up to gunicorn's maximum (8190 bytes, its default is 4094) reach
the app, which refuses URLs over recovery.errors.URL_MAX_BYTES (4096) with its
own 414: JSON under /v1/, its error page elsewhere. Only a longer line gets
gunicorn's HTML 414, and a header over 8190 bytes its HTML 431.
"""

limit_request_line = 8190
limit_request_field_size = 8190

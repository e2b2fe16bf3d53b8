from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import SelectField
from wtforms.fields.choices import SelectChoice

from recovery.imports.mapping import TARGETS, normalise


class UploadForm(FlaskForm):
    file = FileField("CSV file", validators=[FileRequired("Choose a CSV file to upload.")])


class MappingForm(FlaskForm):
    """One select per field we import; each offers the file's columns or "not in the file"."""

    def chosen(self) -> dict[str, str]:
        return {t.name: getattr(self, t.name).data or "" for t in TARGETS}

    def apply_errors(self, errors: dict[str, str]) -> None:
        for name, message in errors.items():
            field = getattr(self, name, None)
            if field is not None:
                field.errors = [*field.errors, message]
            else:
                self.form_errors.append(message)


def mapping_form(header: list[str], initial: dict[str, str], *, submitted: bool) -> MappingForm:
    """The form for this file's header; `submitted` reads the request, else shows `initial`."""
    choices = [SelectChoice("", "— not in the file —")] + [
        SelectChoice(normalise(name), name) for name in header if name.strip()
    ]

    class Form(MappingForm):
        pass

    for target in TARGETS:
        setattr(
            Form,
            target.name,
            SelectField(
                target.label,
                choices=choices,
                default=initial.get(target.name, ""),
                description=target.hint,
                validate_choice=False,  # mapping.check names an unknown column in words
            ),
        )
    return Form() if submitted else Form(formdata=None)

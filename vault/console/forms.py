"""Console forms. Credential checks live in the views, next to the lockout bookkeeping."""

from __future__ import annotations

from typing import Any

from django import forms


class SignInForm(forms.Form):
    email = forms.EmailField(
        label="E-mail address",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "username", "autofocus": True}),
    )
    password = forms.CharField(
        label="Password",
        strip=False,
        max_length=4096,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class CodeForm(forms.Form):
    """A code from the authenticator app, or (when ``allow_recovery``) a recovery code."""

    code = forms.CharField(
        label="Code from your authenticator app",
        max_length=32,
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "inputmode": "numeric",
                "autofocus": True,
                "spellcheck": "false",
                "autocapitalize": "off",
            }
        ),
    )

    def __init__(self, *args: Any, allow_recovery: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if allow_recovery:
            field = self.fields["code"]
            field.label = "Code from your authenticator app, or a recovery code"
            field.widget.attrs["inputmode"] = "text"

    def clean_code(self) -> str:
        # Authenticator apps show "123 456"; recovery codes are lowercase base32.
        return "".join(self.cleaned_data["code"].split()).lower()

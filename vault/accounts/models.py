"""The user model (sign-in by e-mail), password history and lockout state."""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models
from django.utils import timezone


class UserManager(BaseUserManager["User"]):
    """Creates users keyed by e-mail address."""

    use_in_migrations = True

    def _create(self, email: str, password: str | None, **extra: Any) -> User:
        if not email:
            raise ValueError("an e-mail address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        if password is None:
            user.set_unusable_password()
        else:
            user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra["is_staff"] = True
        extra["is_superuser"] = True
        return self._create(email, password, **extra)


class User(AbstractUser):
    """A person. Platform operators are staff; everyone else belongs to tenants by membership."""

    username = None  # type: ignore[assignment]
    email = models.EmailField("e-mail address", unique=True)
    # PCI-DSS 8.3.4: consecutive failed sign-in attempts and the lockout they caused.
    failed_login_count = models.PositiveIntegerField(default=0)
    locked_until = models.DateTimeField(null=True, blank=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects: ClassVar[UserManager] = UserManager()  # type: ignore[assignment]

    class Meta:
        ordering = ("email",)

    def __str__(self) -> str:
        return self.email

    def is_locked(self, now: Any = None) -> bool:
        moment = now or timezone.now()
        return self.locked_until is not None and self.locked_until > moment


class PasswordHistory(models.Model):
    """Hashes of a user's recent passwords (PCI-DSS 8.3.7: none of the last four reused)."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="password_history")
    password = models.CharField(max_length=256)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name_plural = "password history"

    def __str__(self) -> str:
        return f"password of {self.user_id} set {self.created_at:%Y-%m-%d}"

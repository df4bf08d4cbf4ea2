"""Factories for the fixed cast of the tests: tenants, people with roles, tokens."""

from __future__ import annotations

from typing import Any, cast

import factory

from vault.accounts.models import User
from vault.tenants.models import Membership, Role, Tenant

PASSWORD = "correct horse 42 battery"


class TenantFactory(factory.django.DjangoModelFactory[Tenant]):
    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"person{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj: User, create: bool, extracted: object, **kwargs: object) -> None:
        if create:
            obj.save()


class MembershipFactory(factory.django.DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.MEMBER


# Typed front doors: factory_boy's declarations confuse type checkers about what a call returns.
def make_tenant(**fields: Any) -> Tenant:
    return cast(Tenant, TenantFactory(**fields))


def make_user(**fields: Any) -> User:
    return cast(User, UserFactory(**fields))


def make_membership(**fields: Any) -> Membership:
    return cast(Membership, MembershipFactory(**fields))

"""Every event type the vault records, and the PCI-DSS v4.0.1 10.2.1.x categories it serves.

``audit_record`` refuses a type that is not listed here, so this table is the complete list;
``tests/audit/test_events.py`` fails when a 10.2.1.x category has no event type.
"""

from __future__ import annotations

# 10.2.1.1 individual user access to cardholder data (here: object content)
# 10.2.1.2 actions taken by anyone with administrative access
# 10.2.1.3 access to all audit logs
# 10.2.1.4 invalid logical access attempts
# 10.2.1.5 changes to identification and authentication credentials
# 10.2.1.6 initialization, stopping or pausing of the audit logs
# 10.2.1.7 creation and deletion of system-level objects
PCI_CATEGORIES = {
    "10.2.1.1": "individual user access to cardholder data",
    "10.2.1.2": "actions taken by any individual with administrative access",
    "10.2.1.3": "access to all audit logs",
    "10.2.1.4": "invalid logical access attempts",
    "10.2.1.5": "changes to identification and authentication credentials",
    "10.2.1.6": "initialization, stopping, or pausing of the audit logs",
    "10.2.1.7": "creation and deletion of system-level objects",
}

EVENT_TYPES: dict[str, tuple[str, ...]] = {
    # authentication
    "auth.token.failure": ("10.2.1.4",),
    "auth.signin.success": ("10.2.1.5",),
    "auth.signin.failure": ("10.2.1.4",),
    "auth.mfa.success": ("10.2.1.5",),
    "auth.mfa.failure": ("10.2.1.4",),
    "auth.signout": ("10.2.1.5",),
    "access.denied": ("10.2.1.4",),
    # credentials and people
    "token.create": ("10.2.1.2", "10.2.1.5"),
    "token.revoke": ("10.2.1.2", "10.2.1.5"),
    "user.password.change": ("10.2.1.5",),
    "user.lock": ("10.2.1.4", "10.2.1.5"),
    "user.unlock": ("10.2.1.2", "10.2.1.5"),
    "member.add": ("10.2.1.2", "10.2.1.5"),
    "member.role.change": ("10.2.1.2", "10.2.1.5"),
    "member.remove": ("10.2.1.2", "10.2.1.5"),
    # tenants and configuration
    "tenant.create": ("10.2.1.2", "10.2.1.7"),
    "tenant.update": ("10.2.1.2",),
    # keys
    "key.create": ("10.2.1.2", "10.2.1.7"),
    "key.rotate": ("10.2.1.2",),
    "key.state.change": ("10.2.1.2",),
    "key.destroy": ("10.2.1.2", "10.2.1.7"),
    "key.rewrap": ("10.2.1.2",),
    "key.substitution": ("10.2.1.4",),
    "key.wrap": ("10.2.1.1",),
    "key.unwrap": ("10.2.1.1",),
    # objects
    "object.create": ("10.2.1.1", "10.2.1.7"),
    "object.write": ("10.2.1.1",),
    "object.read": ("10.2.1.1",),
    "object.delete": ("10.2.1.1", "10.2.1.7"),
    "object.header.replace": ("10.2.1.1",),
    # the audit log itself
    "audit.log.start": ("10.2.1.6",),
    "audit.read": ("10.2.1.3",),
    "audit.export": ("10.2.1.3",),
    "audit.prune": ("10.2.1.3", "10.2.1.6"),
    # dual control
    "approval.request": ("10.2.1.2",),
    "approval.approve": ("10.2.1.2",),
    "approval.deny": ("10.2.1.2",),
    "approval.granted": ("10.2.1.2",),
    "approval.cancel": ("10.2.1.2",),
    "approval.expire": ("10.2.1.2",),
    "approval.execute": ("10.2.1.2",),
    # compliance
    "compliance.run": ("10.2.1.2",),
    "compliance.evidence": ("10.2.1.2",),
    "compliance.report.export": ("10.2.1.3",),
    "compliance.waiver.request": ("10.2.1.2",),
    "compliance.waiver.approve": ("10.2.1.2",),
    "compliance.waiver.reject": ("10.2.1.2",),
    "compliance.waiver.revoke": ("10.2.1.2",),
    "compliance.attest": ("10.2.1.2",),
}

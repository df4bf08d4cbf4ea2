"""Key backends: protect data keys with key-encryption keys that never leave the backend.

Importable without Django. The backend interface and the local, PKCS#11, TPM 2.0 and KMIP
backends arrive with the key-backends work; nothing here yet.
"""

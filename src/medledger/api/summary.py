"""placeholder"""

from fastapi import APIRouter


def make_router() -> APIRouter:
    return APIRouter()

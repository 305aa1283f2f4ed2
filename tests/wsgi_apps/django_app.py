"""A Django project in one module: settings, one view, the WSGI application."""

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="not-a-secret-tests-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402 -- after the settings
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def index(request: object) -> HttpResponse:
    return HttpResponse(b"django says hello", content_type="text/plain")


@csrf_exempt
def upload(request: object) -> JsonResponse:
    return JsonResponse({"size": len(request.body), "method": request.method})  # type: ignore[attr-defined]


urlpatterns = [path("", index), path("upload", upload)]

application = get_wsgi_application()

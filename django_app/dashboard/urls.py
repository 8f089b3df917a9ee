from __future__ import annotations

from django.urls import path

from agentstream.django_app.dashboard import views

app_name = "agentstream-dashboard"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("status.json", views.status, name="status"),
]

"""A BACnet/IP device for the tests: a bacpypes3 application on 127.0.0.1 with a small plant.

Objects: analog-input 1 (temperature, COV increment 0.1), analog-value 2 (a commandable setpoint),
binary-value 3 (a pump), multi-state-value 4 (mode), characterstring-value 5 (a note) and
analog-output 6 (a commandable valve). `cov = False` makes the device deny SubscribeCOV in its
protocol-services-supported, as many small controllers do.
"""

from __future__ import annotations

import socket
from typing import Any

from bacpypes3.app import Application
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.basetypes import ServicesSupported
from bacpypes3.comm import bind
from bacpypes3.ipv4.app import NormalApplication
from bacpypes3.ipv4.link import NormalLinkLayer
from bacpypes3.local.analog import AnalogInputObject, AnalogOutputObject, AnalogValueObject
from bacpypes3.local.binary import BinaryValueObject
from bacpypes3.local.cmd import Commandable
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateValueObject
from bacpypes3.local.object import Object as LocalObject
from bacpypes3.netservice import NetworkServiceAccessPoint, NetworkServiceElement
from bacpypes3.object import CharacterStringValueObject as _CharacterStringValueObject
from bacpypes3.pdu import IPv4Address


class CommandableAnalogValue(Commandable, AnalogValueObject):  # type: ignore[misc]
    pass


class CharacterStringValue(LocalObject, _CharacterStringValueObject):  # type: ignore[misc]
    pass


class _NoCovDevice(DeviceObject):  # type: ignore[misc]
    """protocol-services-supported without SubscribeCOV."""

    @property  # type: ignore[misc]
    def protocolServicesSupported(self) -> ServicesSupported:
        services = ServicesSupported(list(DeviceObject.protocolServicesSupported.fget(self)))
        services[5] = 0
        return services

    @protocolServicesSupported.setter
    def protocolServicesSupported(self, value: Any) -> None:
        pass


class _BoundApplication(NormalApplication):  # type: ignore[misc]
    """NormalApplication on a socket bound beforehand (it does not pass `bind_socket` on)."""

    def __init__(self, device: DeviceObject, local: IPv4Address, sock: socket.socket) -> None:
        Application.__init__(self)
        self.asap = ApplicationServiceAccessPoint(device, self.device_info_cache)
        self.nsap = NetworkServiceAccessPoint()
        self.nse = NetworkServiceElement()
        bind(self.nse, self.nsap)
        bind(self, self.asap, self.nsap)
        self.normal = NormalLinkLayer(local, bind_socket=sock)
        self.nsap.bind(self.normal, address=local)
        self.add_object(device)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BacnetDevice:
    """Start with `start()`, stop with `stop()`; `objects[name]` is the live object."""

    def __init__(self, port: int, instance: int = 1001, *, cov: bool = True) -> None:
        self.port = port
        self.instance = instance
        self.cov = cov
        self.app: NormalApplication | None = None
        self.objects: dict[str, Any] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cls = DeviceObject if self.cov else _NoCovDevice
        device = cls(objectIdentifier=("device", self.instance), objectName="test-ahu", vendorIdentifier=999)
        # bound here, synchronously (bacpypes3 binds in a task of its own, so a port picked for the
        # client meanwhile could be this one); no SO_REUSEPORT, so a taken port fails at once
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", self.port))
        self.app = _BoundApplication(device, IPv4Address(self.address), self._sock)
        flags = [0, 0, 0, 0]
        objs = [
            AnalogInputObject(objectIdentifier=("analog-input", 1), objectName="temperature", presentValue=21.5,
                              statusFlags=flags, units="degreesCelsius", covIncrement=0.1,
                              reliability="noFaultDetected", outOfService=False),
            CommandableAnalogValue(objectIdentifier=("analog-value", 2), objectName="setpoint", presentValue=20.0,
                                   statusFlags=flags, units="percent", relinquishDefault=20.0, covIncrement=0.5),
            BinaryValueObject(objectIdentifier=("binary-value", 3), objectName="pump", presentValue="inactive",
                              statusFlags=flags),
            MultiStateValueObject(objectIdentifier=("multi-state-value", 4), objectName="mode", presentValue=2,
                                  numberOfStates=4, statusFlags=flags),
            CharacterStringValue(objectIdentifier=("characterstring-value", 5), objectName="note",
                                 presentValue="hello", statusFlags=flags),
            AnalogOutputObject(objectIdentifier=("analog-output", 6), objectName="valve", presentValue=0.0,
                               statusFlags=flags, units="percent", relinquishDefault=0.0, covIncrement=1.0),
        ]  # fmt: skip
        for obj in objs:
            self.app.add_object(obj)
            self.objects[str(obj.objectName)] = obj

    def stop(self) -> None:
        if self.app is not None:
            self.app.close()
            self._sock.close()
            self.app = None

# mk/install.mk - `make install` and `make uninstall` for slurmgate.
#
# Included by the top Makefile, which defines the rule for build/slurmgate.
#
#   make install                                  # into /usr/local
#   make install PREFIX=/usr                      # as a distribution would
#   make install DESTDIR=/tmp/stage PREFIX=/usr   # staged, e.g. for a package
#   make uninstall [PREFIX=...] [DESTDIR=...]
#
# What goes where (every directory can be overridden on the command line):
#   $(SBINDIR)/slurmgate                  PREFIX/sbin: a system daemon, started by
#                                         systemd and run by the administrator
#                                         (like nginx, sshd), not a user command;
#                                         its manual is in section 8 to match.
#   $(SYSTEMDUNITDIR)/slurmgate.service   PREFIX/lib/systemd/system for PREFIX /usr
#                                         or /usr/local (both are in systemd's unit
#                                         search path); for any other PREFIX
#                                         (/opt/...) systemd would not find it
#                                         there, so /etc/systemd/system.
#   $(MANDIR)/man8/slurmgate.8, man5/slurmgate.json.5
#   $(AGENTDIR)/slurmgate-agent           PREFIX/share/slurmgate: the remote agent
#                                         (remote/slurmgate-agent, POSIX sh), not
#                                         run on this host: the admin copies it to
#                                         the Slurm login node (README, "The remote
#                                         agent"), so architecture-independent data
#                                         rather than libexec; mode 0755 so that
#                                         scp keeps it executable.
#   $(SYSCONFDIR)/slurmgate/slurmgate.json   /etc, whatever PREFIX is: the
#                                         example config, installed only when no
#                                         config is there (an admin's config is
#                                         never overwritten), mode 0640 (it may
#                                         hold admin_token).
# The unit is installed with its binary paths rewritten to $(SBINDIR) and its
# config path to $(SYSCONFDIR).
# `uninstall` removes what `install` put there except the config and
# /var/lib/slurmgate (admin data), which it names.

# This fragment must not change the top Makefile's default goal (`all`),
# wherever it is included.
sg_saved_default_goal := $(.DEFAULT_GOAL)

PREFIX     ?= /usr/local
DESTDIR    ?=
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
AGENTDIR   ?= $(PREFIX)/share/slurmgate
SYSCONFDIR ?= /etc
ifneq ($(filter /usr /usr/ /usr/local /usr/local/,$(PREFIX)),)
SYSTEMDUNITDIR ?= $(patsubst %/,%,$(PREFIX))/lib/systemd/system
else
SYSTEMDUNITDIR ?= /etc/systemd/system
endif
INSTALL    ?= install

SG_CONFIG  = $(DESTDIR)$(SYSCONFDIR)/slurmgate/slurmgate.json

.PHONY: install uninstall

install: build/slurmgate dist/slurmgate.service man/slurmgate.8 man/slurmgate.json.5 examples/slurmgate.json \
	 remote/slurmgate-agent
	$(INSTALL) -D -m 0755 build/slurmgate $(DESTDIR)$(SBINDIR)/slurmgate
	@# (a file of this make's own: two installs at once, as the side-by-side
	@# test suites run, must not write one file)
	t=build/slurmgate.service.$$$$; \
	sed -e 's|/usr/local/sbin/slurmgate|$(SBINDIR)/slurmgate|g' \
	    -e 's|/etc/slurmgate/|$(SYSCONFDIR)/slurmgate/|g' \
	    dist/slurmgate.service > $$t && \
	$(INSTALL) -D -m 0644 $$t $(DESTDIR)$(SYSTEMDUNITDIR)/slurmgate.service; \
	st=$$?; rm -f $$t; exit $$st
	$(INSTALL) -D -m 0644 man/slurmgate.8 $(DESTDIR)$(MANDIR)/man8/slurmgate.8
	$(INSTALL) -D -m 0644 man/slurmgate.json.5 $(DESTDIR)$(MANDIR)/man5/slurmgate.json.5
	$(INSTALL) -D -m 0755 remote/slurmgate-agent $(DESTDIR)$(AGENTDIR)/slurmgate-agent
	@if [ -e '$(SG_CONFIG)' ]; then \
		echo "keeping the existing $(SG_CONFIG)"; \
	else \
		echo "$(INSTALL) -D -m 0640 examples/slurmgate.json $(SG_CONFIG)"; \
		$(INSTALL) -D -m 0640 examples/slurmgate.json '$(SG_CONFIG)'; \
	fi
	@echo "installed. Edit $(SYSCONFDIR)/slurmgate/slurmgate.json, check it with"
	@echo "  $(SBINDIR)/slurmgate -t -c $(SYSCONFDIR)/slurmgate/slurmgate.json"
	@echo "then: systemctl daemon-reload && systemctl enable --now slurmgate"
	@echo "For Slurm services with slurm_agent: copy $(AGENTDIR)/slurmgate-agent to the login node"

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/slurmgate
	rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/slurmgate.service
	rm -f $(DESTDIR)$(MANDIR)/man8/slurmgate.8 $(DESTDIR)$(MANDIR)/man5/slurmgate.json.5
	rm -f $(DESTDIR)$(AGENTDIR)/slurmgate-agent
	rmdir $(DESTDIR)$(AGENTDIR) 2>/dev/null || true
	@echo "kept $(SG_CONFIG) and $(DESTDIR)/var/lib/slurmgate (state): remove them by hand if unwanted"

.DEFAULT_GOAL := $(sg_saved_default_goal)

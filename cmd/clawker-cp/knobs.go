package main

import (
	"log/slog"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"

	"github.com/clawker/clawker-cp/pkg/debugknob"
)

// logKnobs logs every debug knob set in this process's environment, one
// event=debug_knob warning each, with its value and meaning. The knobs are
// declared in pkg/debugknob; main.go's debug*Env constants name the ones
// clawker-cp reads (knobs_test.go keeps the two in step).
func logKnobs(log *zap.Logger) {
	debugknob.LogSet(slog.New(zapslog.NewHandler(log.Core())), os.Getenv)
}

// A SHIM, NOT NINJATRADER. The few NinjaScript types and members SmcAutobot.cs uses, declared with
// the signatures NinjaTrader 8 documents (NinjaScript reference: Strategy, Bars, Position,
// Instrument/MasterInstrument, Globals.GeneralOptions), so that the strategy's own code compiles
// on Linux with Mono and can be driven bar by bar by tests/ninjatrader/SmcTests.cs.
//
// What it proves: SmcAutobot.cs is valid C# 7.2 against these members, and its decisions (given
// bars, a position and the service's answers) are the ones the tests expect. What it does not
// prove: that NinjaTrader itself behaves like this shim (order handling, fills, session
// templates, threading of TriggerCustomEvent). Members marked "shim only" are test hooks that do
// not exist in NinjaTrader; everything else mirrors a NinjaTrader member's name and type.

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Globalization;

namespace NinjaTrader.Core
{
    public sealed class GeneralOptions
    {
        /// <summary>Tools → Options → General → Time zone: the zone bars are shown in.</summary>
        public TimeZoneInfo TimeZoneInfo { get; set; }
    }

    public static class Globals
    {
        public static readonly GeneralOptions GeneralOptions = new GeneralOptions { TimeZoneInfo = TimeZoneInfo.Local };
    }
}

namespace NinjaTrader.Cbi
{
    public enum MarketPosition { Flat, Long, Short }

    public enum LogLevel { Alert, Error, Information, Warning }

    public sealed class Position
    {
        public MarketPosition MarketPosition { get; set; }
        public int Quantity { get; set; }
    }

    public sealed class MasterInstrument
    {
        public string Name { get; set; }
        public double TickSize { get; set; }

        public double RoundToTickSize(double price)
        {
            return Math.Round(price / TickSize, MidpointRounding.AwayFromZero) * TickSize;
        }
    }

    public sealed class Instrument
    {
        public MasterInstrument MasterInstrument { get; set; }
    }

    public sealed class Order
    {
    }
}

namespace NinjaTrader.Data
{
    public enum BarsPeriodType { Tick, Volume, Range, Second, Minute, Day, Week, Month, Year }

    public sealed class BarsPeriod
    {
        public BarsPeriodType BarsPeriodType { get; set; }
        public int Value { get; set; }
    }

    public sealed class Bars
    {
        // shim only: the series, by bar index, and the bar being processed
        internal DateTime[] Times;
        internal double[] Opens, Highs, Lows, Closes;
        internal long[] Volumes;
        internal bool[] LastOfSession;
        internal int Current;

        public Bars(DateTime[] times, double[] opens, double[] highs, double[] lows, double[] closes, long[] volumes,
                    bool[] lastOfSession)
        {
            Times = times; Opens = opens; Highs = highs; Lows = lows; Closes = closes; Volumes = volumes;
            LastOfSession = lastOfSession;
        }

        public int Count { get { return Times.Length; } }
        public bool IsLastBarOfSession { get { return LastOfSession[Current]; } }
        public DateTime GetTime(int index) { return Times[index]; }
        public double GetOpen(int index) { return Opens[index]; }
        public double GetHigh(int index) { return Highs[index]; }
        public double GetLow(int index) { return Lows[index]; }
        public double GetClose(int index) { return Closes[index]; }
        public long GetVolume(int index) { return Volumes[index]; }
    }
}

namespace NinjaTrader.NinjaScript
{
    public enum State { SetDefaults, Configure, Active, DataLoaded, Historical, Transition, Realtime, Terminated, Finalized }

    public enum Calculate { OnBarClose, OnEachTick, OnPriceChange }

    public enum EntryHandling { AllEntries, UniqueEntries }

    public enum CalculationMode { Currency, Percent, Pips, Price, Ticks }

    [AttributeUsage(AttributeTargets.Property)]
    public sealed class NinjaScriptPropertyAttribute : Attribute
    {
    }
}

namespace NinjaTrader.NinjaScript.Strategies
{
    using NinjaTrader.Cbi;
    using NinjaTrader.Data;

    public abstract class Strategy
    {
        public string Name { get; set; }
        public string Description { get; set; }
        public Calculate Calculate { get; set; }
        public int EntriesPerDirection { get; set; }
        public EntryHandling EntryHandling { get; set; }
        public bool IsExitOnSessionCloseStrategy { get; set; }
        public int ExitOnSessionCloseSeconds { get; set; }
        public int BarsRequiredToTrade { get; set; }
        public State State { get; private set; }
        public int CurrentBar { get; private set; }
        public Bars Bars { get; private set; }
        public BarsPeriod BarsPeriod { get; private set; }
        public Instrument Instrument { get; private set; }
        public Position Position { get; private set; }
        public bool IsInStrategyAnalyzer { get; private set; }

        protected virtual void OnStateChange() { }
        protected virtual void OnBarUpdate() { }

        public void Print(object value) { Record(ShimOutput, Convert.ToString(value, CultureInfo.InvariantCulture)); }
        public void Log(string message, LogLevel logLevel) { Record(ShimOutput, logLevel + ": " + message); }

        public void TriggerCustomEvent(Action<object> customEvent, object state)
        {
            ShimCustomEvents.Add(() => customEvent(state));  // run by the harness on "NinjaTrader's" thread
        }

        public void SetStopLoss(string fromEntrySignal, CalculationMode mode, double value, bool isSimulatedStop)
        {
            Record(ShimCalls, string.Format(CultureInfo.InvariantCulture, "SetStopLoss {0} {1} {2} {3}", fromEntrySignal,
                                            mode, value, isSimulatedStop));
        }

        public void SetProfitTarget(string fromEntrySignal, CalculationMode mode, double value)
        {
            Record(ShimCalls, string.Format(CultureInfo.InvariantCulture, "SetProfitTarget {0} {1} {2}", fromEntrySignal,
                                            mode, value));
        }

        public Order EnterLong(int quantity, string signalName) { return Submit("EnterLong " + quantity + " " + signalName); }
        public Order EnterShort(int quantity, string signalName) { return Submit("EnterShort " + quantity + " " + signalName); }
        public Order ExitLong(string signalName, string fromEntrySignal) { return Submit("ExitLong " + signalName + " " + fromEntrySignal); }
        public Order ExitShort(string signalName, string fromEntrySignal) { return Submit("ExitShort " + signalName + " " + fromEntrySignal); }
        public int BarsSinceEntryExecution() { return ShimBarsSinceEntry; }

        // ------------------------------------------------------------ shim only: the harness's controls

        public readonly List<string> ShimCalls = new List<string>();
        public readonly List<string> ShimOutput = new List<string>();
        public readonly BlockingCollection<Action> ShimCustomEvents = new BlockingCollection<Action>();
        public int ShimBarsSinceEntry = -1;

        public void ShimLoad(Bars bars, BarsPeriod period, Instrument instrument, bool inStrategyAnalyzer = false)
        {
            Bars = bars;
            BarsPeriod = period;
            Instrument = instrument;
            Position = new Position();
            IsInStrategyAnalyzer = inStrategyAnalyzer;
        }

        public void ShimEnter(State state)
        {
            State = state;
            OnStateChange();
        }

        public void ShimBarClosed(int index)
        {
            CurrentBar = index;
            Bars.Current = index;
            OnBarUpdate();
        }

        private Order Submit(string call)
        {
            Record(ShimCalls, call);
            return new Order();
        }

        private static void Record(List<string> list, string line)
        {
            lock (list)
                list.Add(line);
        }
    }
}
